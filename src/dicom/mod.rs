//! DICOM networking and objects: the SCP that receives studies, the lists of SOP classes and
//! transfer syntaxes we accept, and DIMSE message encoding.

pub mod dimse;
pub mod scp;
pub mod scu;
pub mod sop;
pub mod tls;
