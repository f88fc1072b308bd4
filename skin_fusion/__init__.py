"""SkinFusion: dermoscopy image + patient metadata fusion classifier for the Hugging Face ecosystem."""
