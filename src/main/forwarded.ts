/**
 * Who the client really is behind a reverse proxy (issue 6). `X-Forwarded-For`, `X-Forwarded-Proto`,
 * `X-Forwarded-Host` and `Forwarded` (RFC 7239) are believed only when the socket peer is a trusted proxy
 * (`trustProxy`: addresses or CIDRs); `Forwarded` is used only when there is no `X-Forwarded-For`. The client is then the rightmost address in the chain that is not itself
 * trusted: every proxy appends the address it received from, so everything left of the first untrusted hop could
 * have been written by the client. From an untrusted peer, every forwarded header is ignored.
 */
import net from 'node:net';

export interface ProxyTrust {
  readonly list: net.BlockList;
  readonly any: boolean;
}

export function parseTrustProxy(entries: readonly string[]): ProxyTrust {
  const list = new net.BlockList();
  for (const raw of entries) {
    const e = raw.trim();
    const [addr, bits] = e.split('/');
    const type = net.isIPv6(addr ?? '') ? 'ipv6' : net.isIPv4(addr ?? '') ? 'ipv4' : null;
    if (type === null) throw new Error(`"${e}" is not an IP address or CIDR`);
    if (bits === undefined) list.addAddress(addr!, type);
    else {
      const n = Number(bits);
      if (!/^[0-9]+$/.test(bits) || n > (type === 'ipv4' ? 32 : 128)) throw new Error(`bad prefix length in "${e}"`);
      list.addSubnet(addr!, n, type);
    }
  }
  return { list, any: entries.length > 0 };
}

/** uWS gives IPv4 peers as IPv4-mapped IPv6 ("0000:…:ffff:7f00:1" text or "::ffff:127.0.0.1"): fold them. */
export function normalizeIp(ip: string): string {
  const s = ip.trim().replace(/^\[|\]$/g, '');
  const mapped = /^(?:0{1,4}:){5}ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(s);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  const dotted = /^(?:0{0,4}:){0,5}:?ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(s);
  if (dotted) return dotted[1]!;
  if (net.isIPv6(s)) {
    // Canonical form, so "0000:0000:…:0001" and "::1" compare equal.
    try {
      return new URL(`http://[${s}]/`).hostname.replace(/^\[|\]$/g, '');
    } catch {
      return s;
    }
  }
  return s;
}

export function isTrusted(trust: ProxyTrust, ip: string): boolean {
  if (!trust.any) return false;
  const n = normalizeIp(ip);
  const type = net.isIPv6(n) ? 'ipv6' : net.isIPv4(n) ? 'ipv4' : null;
  return type !== null && trust.list.check(n, type);
}

export interface ClientView {
  /** The client's address (the socket peer unless a trusted proxy says otherwise). */
  ip: string;
  /** 'http' or 'https' as the client used it. */
  proto: 'http' | 'https';
  /** Host (and port) the client addressed. */
  host: string;
  /** The socket peer was a trusted proxy. */
  viaProxy: boolean;
}

const TOKEN_HOST = /^[A-Za-z0-9.\-:[\]]{1,255}$/;

/** Parses RFC 7239 `Forwarded` into its elements (for=, proto=, host=), oldest first. */
function parseForwarded(v: string): Array<Record<string, string>> {
  const out: Array<Record<string, string>> = [];
  for (const element of v.split(',')) {
    const rec: Record<string, string> = {};
    for (const pair of element.split(';')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const k = pair.slice(0, eq).trim().toLowerCase();
      let val = pair.slice(eq + 1).trim();
      if (val.startsWith('"') && val.endsWith('"')) val = val.slice(1, -1);
      rec[k] = val;
    }
    out.push(rec);
  }
  return out;
}

/** `for=` values may carry a port ("1.2.3.4:5", "[::1]:5"); keep the address. */
function stripPort(v: string): string {
  const s = v.trim();
  if (s.startsWith('[')) return s.slice(1, s.indexOf(']') > 0 ? s.indexOf(']') : undefined);
  if (net.isIPv6(s)) return s;
  const colon = s.lastIndexOf(':');
  return colon > 0 && net.isIPv4(s.slice(0, colon)) ? s.slice(0, colon) : s;
}

export function clientView(trust: ProxyTrust, peer: string, headers: Readonly<Record<string, string>>): ClientView {
  const host = TOKEN_HOST.test(headers['host'] ?? '') ? headers['host']! : 'localhost';
  const direct: ClientView = { ip: normalizeIp(peer), proto: 'http', host, viaProxy: false };
  if (!isTrusted(trust, peer)) return direct;

  let chain: string[] = [];
  let proto: string | undefined;
  let fhost: string | undefined;
  // X-Forwarded-* first: common proxies (nginx, HAProxy, most load balancers) append to them, while they pass a
  // client's own `Forwarded` header through untouched. `Forwarded` counts only when no X-Forwarded-For is present.
  const fwd = headers['x-forwarded-for'] === undefined ? headers['forwarded'] : undefined;
  if (fwd) {
    const els = parseForwarded(fwd);
    chain = els.map((e) => (e['for'] ? stripPort(e['for']) : '')).filter((x) => x !== '');
    // The element the nearest proxy wrote is the last one.
    proto = els.at(-1)?.['proto'];
    fhost = els.at(-1)?.['host'];
  } else {
    chain = (headers['x-forwarded-for'] ?? '').split(',').map((s) => stripPort(s)).filter((s) => s !== '');
    proto = headers['x-forwarded-proto']?.split(',').at(-1)?.trim();
    fhost = headers['x-forwarded-host']?.split(',').at(-1)?.trim();
  }
  // Walk from the nearest hop back; the first address that is not a trusted proxy is the client.
  let ip = direct.ip;
  for (let i = chain.length - 1; i >= 0; i--) {
    const hop = chain[i]!;
    if (!net.isIP(normalizeIp(hop))) break; // "unknown" or obfuscated: stop trusting further left
    ip = normalizeIp(hop);
    if (!isTrusted(trust, hop)) break;
  }
  return {
    ip,
    proto: proto?.toLowerCase() === 'https' ? 'https' : proto?.toLowerCase() === 'http' ? 'http' : direct.proto,
    host: fhost && TOKEN_HOST.test(fhost) ? fhost : host,
    viaProxy: true,
  };
}
