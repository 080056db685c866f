"""Everything main.py needs that is not the training loop or the model, one module per concern.

    flags        every flag, its default and help; the commands printed back (no torch)
    settings     the flags merged with a checkpoint's, checked; the device
    data         MNIST-style files through torchvision, checked; each split one tensor
    runfiles     the run folder: the model built or restored, each epoch saved
    checkpoint   the files: checkpoint.pt (atomic), metrics.jsonl, RNG states
    ctrl_c       Ctrl-C held during a write, and one that Python drops still stopping a loop
    schedules    the learning rate at each step
    likelihood   importance-weighted estimates of log p(x) and the IWAE bound
    threads      how many CPU threads torch uses while training
    latent       active units, the latent means and their 2-D map
    viewer       the pictures: Visdom windows and PNG files
    messages     the lines a run prints
    modes        --evaluate and --generate: a checkpoint without training

Imports point one way: main.py → helpers → vae.py; no helper imports main.py.
"""
