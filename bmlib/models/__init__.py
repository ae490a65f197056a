"""Model families, one file each: ``gpt`` (decoder), ``bert`` (encoder), ``vit``, and the small
domain models; ``hf`` converts to and from Hugging Face ``transformers``."""
