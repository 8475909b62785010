"""MEBin (AnomalyNCD, CVPR 2025) computed exactly from one H0 persistence diagram per image."""
