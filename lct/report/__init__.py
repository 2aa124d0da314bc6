"""Tables, figures, the 2-NFE index sweep and the cost estimates."""
