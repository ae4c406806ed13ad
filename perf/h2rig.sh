# perf/h2rig.sh: the HTTP/2 rig's backend, sourced by perf/h2cost and perf/callcost.
# Expects W (work directory), BP (HTTP/1 port), BH2 (HTTP/2 and gRPC port) and here
# (perf/). Writes $W/backend.conf (nginx: 612 bytes on BP; on BH2 the same file and
# grpc-unary's canned answer with its grpc-status trailer) and $W/grpc-request.bin
# (the request h2load sends), the same bytes as perf/harness.py's.
mkdir -p $W/www/bench.Echo $W/tmp
head -c 612 /dev/zero | tr '\0' x > $W/www/small
cat > $W/backend.conf <<CONF
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend-error.log warn;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nodelay on; keepalive_timeout 300s;
  keepalive_requests 1000000; client_body_temp_path $W/tmp;
  server { listen 127.0.0.1:$BP backlog=4096; root $W/www; }
  server { listen 127.0.0.1:$BH2 http2 backlog=4096; root $W/www;
    location = /bench.Echo/Call { mirror /grpc-drain; error_page 405 =200 /grpc-answer/Call; }
    location = /grpc-drain { internal; return 204; }
    location /grpc-answer/ { internal; alias $W/www/bench.Echo/; default_type application/grpc;
      add_trailer grpc-status 0; } } }
CONF
python3 -c '
import sys
sys.path.insert(0, sys.argv[1])
import harness
open(sys.argv[2], "wb").write(harness.grpc_message(harness.GRPC_RESPONSE_PAYLOAD))
open(sys.argv[3], "wb").write(harness.grpc_message(harness.GRPC_REQUEST_PAYLOAD))
' "$here" $W/www/bench.Echo/Call $W/grpc-request.bin
