//! Defaults for objects given without colour or codes: the colour palette and the SNOMED CT
//! "Tissue" code.

use super::Code;

/// Default colours for objects given without one.
pub const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Default SNOMED CT category / type for objects given without codes: "Tissue" / "Tissue".
pub fn default_code() -> Code {
    Code::sct("85756007", "Tissue")
}
