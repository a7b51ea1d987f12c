"""Stage 4, methods: kernels, images and tasks in, predictions and accuracies out.

Takes a task's arrays and one frozen options object per method; gives the MNK regression
(`mnk`), MAML and iMAML with `torch.func` (`maml`, their networks in `nets`, their options in
`options`, plain Python), the label encoder (`encoder`), the target encodings and decoders
(`targets`) and accuracy with confidence intervals (`metrics`). Uses no other stage.
"""
