# One rule per row of the stage table. The shell command is exactly dvc.yaml's `cmd`.

for _stage in STAGES:

    rule:
        name:
            _stage.name
        input:
            _stage.deps,
        output:
            [directory(o) for o in _stage.outs],
        params:
            sections=section_json(_stage),
        shell:
            _stage.cmd.replace("{", "{{").replace("}", "}}")
