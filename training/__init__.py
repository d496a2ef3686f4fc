"""training: the Keras side of the surgery project — offline MNIST, model builders, experiments.

- `training.data`: real MNIST digits with no network (the bundled 5k subset or a local mnist.npz).
- `training.models`: Keras 3 builders for the reference and experiment models.
- `training.make_reference_models`: trains and writes `models/` (``python -m training.make_reference_models``).
- ``python -m training EXPERIMENT``: the experiments (`grow`, `transfer`, `symmetry`) and `demo`.

Importing this package does not import TensorFlow; the modules that train do.
"""
