"""`python -m services.heartbeat`: run one heartbeat process against NATS_URL and DATABASE_URL."""

from services.heartbeat.bootstrap import main

if __name__ == "__main__":
    main()
