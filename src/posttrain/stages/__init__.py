"""One module per pipeline stage; each has a `main(params, ...)` and is run by `posttrain <stage>`."""
