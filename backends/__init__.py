"""attnplan's backends, one folder each; importing a backend never needs a GPU library."""
