"""Linearizing a softmax model into the hybrid linear-attention student (the LoLCATs recipe).

Stage 1 (`transfer`) trains only the feature maps and mixing weights so each layer's hybrid attention
reproduces the teacher's softmax output; stage 2 (`finetune`) adds LoRA on q/k/v/o and distils the
teacher's next-token distribution. Both checkpoint often and resume exactly.
"""
