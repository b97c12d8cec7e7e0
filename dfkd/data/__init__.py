"""Real data sources: scikit-learn's bundled digits, image folders."""
