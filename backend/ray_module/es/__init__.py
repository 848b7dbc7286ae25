"""Evolution strategies on Ray (Salimans et al. 2017): a shared noise table so workers
exchange only indices and scalar losses, antithetic pairs, centered-rank fitness shaping,
and an optimizer applied once on the server."""
