"""The head (SPEC 5): ``api`` trains one MLP per image, batched, with the loss of one module per
backend (``_cpp``, ``_torch``); ``reference`` is the released head, image by image."""
