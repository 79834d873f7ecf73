#!/usr/bin/env bash
# Produce one password-reset email event to Spillway with kcat (Debian: apt-get install kcat).
#
#   examples/kcat/produce.sh [EVENT_ID] [RECIPIENT]
#
# Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:9092), TOPIC (default
# email.raw-events.critical: the topic of the event's priority, so that the reset never
# waits behind a burst of bulk; email.raw-events, the catch-all, works too).
# The contract is docs/producing.md: key = event_id, value = one UTF-8 JSON object.
set -euo pipefail

BOOTSTRAP=${KAFKA_BOOTSTRAP:-127.0.0.1:9092}
TOPIC=${TOPIC:-email.raw-events.critical}
EVENT_ID=${1:-kcat-$(date +%s)-$RANDOM}
TO=${2:-grace@example.com}

# One JSON object; newlines are stripped below (kcat sends one message per line).
read -r -d '' EVENT <<JSON || true
{
  "event_id": "$EVENT_ID",
  "template": "password_reset",
  "to": "$TO",
  "priority": "critical",
  "source": "kcat-example",
  "data": {
    "user": {"name": "Grace Hopper"},
    "reset_url": "https://shop.example/account/reset?token=3f9c2a7e1b4d48c6",
    "expires_minutes": 30,
    "shop": {"name": "Spillway Shop", "url": "https://shop.example"}
  }
}
JSON

# -k: the Kafka key (the event id: Spillway's idempotency key; keeps an id on one partition)
# acks=all: kcat exits non-zero unless the broker has the event on all in-sync replicas.
printf '%s\n' "$EVENT" | tr -d '\n' | kcat -P -b "$BOOTSTRAP" -t "$TOPIC" -k "$EVENT_ID" \
  -X acks=all -X enable.idempotence=true
echo "produced $EVENT_ID to $TOPIC"
