"""The foundation every other room uses, in synth and in dfkd: the one exception type (errors), setting declarations
(settings), devices, threads and progress (runtime), torch.distributed (distributed) and the student file
(student_file). It imports nothing else of the project."""
