"""The config error every layer raises and the CLI prints, one line per problem."""


class ConfigError(Exception):
    """One or more config problems; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
