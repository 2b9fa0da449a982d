"""One module per checker kind; `itsproxy.strategies.checkers.build` builds and runs them."""
