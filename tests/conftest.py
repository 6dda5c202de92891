import os

# Tests run on CPU with few cores: keep every library to one thread per process unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
