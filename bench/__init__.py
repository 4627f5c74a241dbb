"""Benchmarks (`python -m bench`, `make bench`): batchmesh side by side with its peers and raw baselines, every
ratio measured in the same run on the same Redis. See bench/__main__.py for what each row means."""
