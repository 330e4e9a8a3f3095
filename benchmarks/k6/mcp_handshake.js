// k6 load test that speaks real MCP (handshake era) to an mcp-gateway.
//
//   k6 run -e MCP_URL=http://127.0.0.1:8080/mcp -e MCP_TOOL=floor__echo -e VUS=16 -e DURATION=30s benchmarks/k6/mcp_handshake.js
//
// Each virtual user runs initialize, takes the Mcp-Session-Id, sends
// notifications/initialized, then calls the tool in a loop with the session
// and protocol-version headers. A check fails on any HTTP error or JSON-RPC error;
// the checks threshold makes k6 exit non-zero then.
// The stateless 2026-07-28 era has its own script: mcp_stateless.js.
import http from 'k6/http';
import { check } from 'k6';

const URL = __ENV.MCP_URL || 'http://127.0.0.1:8080/mcp';
const TOOL = __ENV.MCP_TOOL || 'floor__echo';
const VERSION = '2025-11-25';
const BASE = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };

export const options = {
  vus: Number(__ENV.VUS || 4),
  duration: __ENV.DURATION || '10s',
  thresholds: { checks: ['rate==1.0'] },
};

let session = null; // per virtual user

function post(body, headers) {
  return http.post(URL, JSON.stringify(body), { headers: Object.assign({}, BASE, headers || {}) });
}

function initialize() {
  const res = post({
    jsonrpc: '2.0', id: 0, method: 'initialize',
    params: { protocolVersion: VERSION, capabilities: {}, clientInfo: { name: 'k6', version: '1' } },
  });
  check(res, { 'initialize 200': (r) => r.status === 200 });
  const id = res.headers['Mcp-Session-Id'];
  post({ jsonrpc: '2.0', method: 'notifications/initialized' }, { 'mcp-session-id': id, 'mcp-protocol-version': VERSION });
  return id;
}

export default function () {
  if (session === null) {
    session = initialize();
  }
  const res = post(
    { jsonrpc: '2.0', id: __ITER + 1, method: 'tools/call', params: { name: TOOL, arguments: { text: 'hello' } } },
    { 'mcp-session-id': session, 'mcp-protocol-version': VERSION },
  );
  check(res, {
    'status 200': (r) => r.status === 200,
    'a result, not an error': (r) => r.status === 200 && r.json('result') !== null && r.json('error') === undefined,
  });
}
