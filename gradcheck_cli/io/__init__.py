"""Files: data, weights, and outputs written safely."""
