"""The pipeline on a real dataset (scikit-learn's digits, Fashion-MNIST): training the teacher (`dfkd train-teacher`:
config, teacher_training) and the whole pipeline end to end (`dfkd demo`: end_to_end). The method itself needs no
real data; these are the pieces the demo, the benchmarks and the tests run it with."""
