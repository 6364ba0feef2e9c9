"""Reading every common data format into canonical rows, and cleaning them."""
