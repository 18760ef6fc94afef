"""The language model: GGUF loading, the Llama-architecture teacher, linear attention and conversion.

`backbone` holds everything that turns tokens into tokens: reading SmolLM2 from its GGUF file, the
PyTorch model, the tokenizer and chat template, the linear-attention library (feature maps, chunked and
recurrent forms, Triton kernels), the constant-size recurrent state, and the converter that linearizes
the teacher into the student. It imports none of Rillet's other packages, so it can be used alone.
"""
