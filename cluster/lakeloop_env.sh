# Environment of every lakeloop process on a launcher-managed node (sourced by aws.yaml's commands).
# Token auth on; the token and MLflow credentials come from files written from the secret store.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$HOME/.ray_auth_token"
export RAY_SERVE_ENABLE_HA_PROXY=1
# lakeloop's HAProxy wrapper (written by aws.yaml's setup_commands): stats and metrics on 127.0.0.1,
# the admin socket mode 600; Ray's own HAProxy config binds them on every interface, socket mode 666
export RAY_SERVE_HAPROXY_BINARY_PATH="$HOME/.lakeloop/haproxy-loopback"
export LAKELOOP_CONFIG="$HOME/lakeloop/conf/lakeloop.yaml"
export LAKELOOP_STORAGE_ROOT="${LAKELOOP_STORAGE_ROOT:-s3://my-lakeloop-bucket/lakeloop}"
# Delta on S3 reads the standard AWS variables and the instance profile (no keys in the config).
# For an S3-compatible store: export AWS_ENDPOINT_URL=https://... (AWS_ALLOW_HTTP=true for http).
# Concurrent commits rely on the store enforcing conditional puts; never set AWS_S3_ALLOW_UNSAFE_RENAME.
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-https://mlflow.internal.example.com}"
export PATH="$HOME/venv/bin:$PATH"
set -a
# shellcheck disable=SC1091
[ -f "$HOME/.lakeloop_secrets.env" ] && . "$HOME/.lakeloop_secrets.env"
set +a
