"""Everything main.py needs that is not the training loop or the model, one module per concern.

    flags        every flag, its default and help (no torch: --help answers at once)
    commands     the commands printed back for the user to run (no torch)
    startup      two start-up settings for speed: the collector, denormal floats
    settings     the flags merged with a checkpoint's, checked; the device
    data         MNIST-style files through torchvision, checked; each split one tensor
    models       the model and Adam: built from the flags, or restored from a checkpoint
    batches      an epoch's batches, and the watch over its steps (losses, progress, threads)
    research     the research options: another objective, bf16, compile; lr schedule, clipping
    schedules    the learning rate at each step
    likelihood   the test loss, importance-weighted estimates of log p(x), the IWAE bound
    runfiles     the run folder, each epoch saved into it by a writer thread
    run_lock     one process at a time in a run folder: <out>/run.lock
    checkpoint   the files: checkpoint.pt (atomic), metrics.jsonl, RNG states
    ctrl_c       Ctrl-C, SIGTERM and SIGHUP: held during a write, a run stopped in one line
    threads      how many CPU threads torch uses while training
    latent       active units, the latent means and their 2-D map, the KL bars drawn
    pictures     an epoch's pictures drawn, and written as PNG files
    visdom_page  the Visdom client, the page's layout, the windows sent each epoch
    messages     the lines a run prints
    no_training  --evaluate and --generate: a checkpoint without training

Imports point one way: main.py → helpers → vae.py; no helper imports main.py.
"""
