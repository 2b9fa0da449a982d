"""One module per checker kind; `strategies.check` builds and runs them."""
