//! Offline segmentation (placeholder).
