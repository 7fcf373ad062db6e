"""`python -m dealseg.client` == `deal-client`."""

from dealseg.client.cli import main

if __name__ == "__main__":
    main(prog_name="deal-client")
