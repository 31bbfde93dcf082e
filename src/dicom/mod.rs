//! DICOM networking and objects: the SCP that receives studies, the SCU that delivers results,
//! decoded pixels as tensors, SEG writing and reading, the lists of SOP classes and transfer
//! syntaxes we accept, and DIMSE message encoding.

pub mod content;
pub mod dimse;
pub mod pdata;
pub mod peer_hosts;
pub mod pixels;
pub mod scp;
pub mod scu;
pub mod seg;
pub mod sequence;
/// The SOP classes and transfer syntaxes we accept, and UID checks (a foundation module,
/// [`crate::sop`], used below and beside the DICOM layer too).
pub use crate::sop;
pub mod tls;
pub mod validate;
pub mod walk;
