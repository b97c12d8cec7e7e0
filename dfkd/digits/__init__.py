"""Everything specific to scikit-learn's bundled handwritten digits: the data split, teacher training and the
end-to-end demo (the real-data pieces that tests and the demo need; the method itself is dataset-free)."""
