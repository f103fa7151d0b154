//! Switchyard policy SDK.
