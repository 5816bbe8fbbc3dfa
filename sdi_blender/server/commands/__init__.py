"""The CLI back-ends: generate, distill2d and compare (progress bars, signals, printing)."""
