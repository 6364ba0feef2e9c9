"""`posttrain compare A B`: two runs side by side (run folders, or commits whose artifacts DVC
has): every metric of every model with its delta and a paired test, the parameters that differ,
which inputs changed for each artifact, and the training curves overlaid."""
