"""Wrappers around the external codecs: T5Gemma text encoder, Wan2.2 video VAE, Stable Audio Open VAE."""
