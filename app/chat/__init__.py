"""The parts of a chat turn: the model queue, prompt assembly, model choice, allowed folders."""
