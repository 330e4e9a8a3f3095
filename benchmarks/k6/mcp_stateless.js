// k6 load test that speaks the stateless MCP era (2026-07-28) to an mcp-gateway.
//
//   k6 run -e MCP_URL=http://127.0.0.1:8080/mcp -e MCP_TOOL=floor__echo -e VUS=16 -e DURATION=30s benchmarks/k6/mcp_stateless.js
//
// No initialize and no session: every request carries the protocol version and
// the client's capabilities in params._meta, and the routing headers
// (MCP-Protocol-Version, Mcp-Method, Mcp-Name) that must agree with the body.
// Each virtual user calls server/discover once, then the tool in a loop. A check
// fails on any HTTP error or JSON-RPC error; the checks threshold makes k6 exit
// non-zero then.
import http from 'k6/http';
import { check } from 'k6';

const URL = __ENV.MCP_URL || 'http://127.0.0.1:8080/mcp';
const TOOL = __ENV.MCP_TOOL || 'floor__echo';
const VERSION = '2026-07-28';
const META = {
  'io.modelcontextprotocol/protocolVersion': VERSION,
  'io.modelcontextprotocol/clientCapabilities': {},
  'io.modelcontextprotocol/clientInfo': { name: 'k6', version: '1' },
};

export const options = {
  vus: Number(__ENV.VUS || 4),
  duration: __ENV.DURATION || '10s',
  thresholds: { checks: ['rate==1.0'] },
};

let discovered = false; // per virtual user

function call(id, method, params, name) {
  const headers = {
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    'mcp-protocol-version': VERSION,
    'mcp-method': method,
  };
  if (name) {
    headers['mcp-name'] = name;
  }
  const body = { jsonrpc: '2.0', id: id, method: method, params: Object.assign({}, params, { _meta: META }) };
  return http.post(URL, JSON.stringify(body), { headers: headers });
}

function ok(res) {
  return res.status === 200 && res.json('result') !== null && res.json('error') === undefined;
}

export default function () {
  if (!discovered) {
    const res = call(0, 'server/discover', {});
    check(res, { 'discover lists 2026-07-28': (r) => ok(r) && r.json('result.supportedVersions').includes(VERSION) });
    discovered = true;
  }
  const res = call(__ITER + 1, 'tools/call', { name: TOOL, arguments: { text: 'hello' } }, TOOL);
  check(res, { 'status 200': (r) => r.status === 200, 'a result, not an error': ok });
}
