"""`python -m services.monitor`: run one monitor process against NATS_URL and DATABASE_URL."""

from services.monitor.bootstrap import main

if __name__ == "__main__":
    main()
