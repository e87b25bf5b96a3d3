"""The byte-level vocabulary, shared by the byte tokenizer (``train.data``) and the byte-level preset."""

BYTE_EOS_ID = 256  # ids 0..255 are the byte values themselves
BYTE_VOCAB_SIZE = 258  # 256 bytes, EOS and one unused id (kept so that saved byte-level models keep their shape)
