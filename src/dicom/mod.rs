//! DICOM networking and objects: the SCP that receives studies, the lists of SOP classes and
//! transfer syntaxes we accept, and DIMSE message encoding.

pub mod pixels;
pub mod sop;
