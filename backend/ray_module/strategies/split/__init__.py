"""Strategy ``split`` (seed 004): CPU loader actors prepare batches on CPU nodes and stream
them, with a bounded number in flight, to one trainer (or evaluator, or predictor) actor on
the node with the GPU."""
