"""Tokenizers: text (Hugging Face), audio codecs (units, HuBERT units, EnCodec) and the units'
Griffin-Lim inversion."""
