/**
 * NBD URIs (NetworkBlockDevice/nbd doc/uri.md), the way a clone on another system is named:
 *
 *   nbd://host[:port]/export            TCP, default port 10809
 *   nbds://host[:port]/export           TCP with TLS (fails unless TLS is negotiated)
 *   nbd+unix:///export?socket=PATH      unix socket
 *   nbds+unix:///export?socket=PATH     unix socket with TLS
 *
 * The export name is the path without its leading "/", percent-decoded ("nbd://h//x" names
 * "/x"). Query parameters understood: socket, tls-certificates=DIR (qemu/libnbd layout:
 * ca-cert.pem, client-cert.pem, client-key.pem), tls-psk-file=PATH (psktool's
 * `username:hexkey` lines), tls-username, tls-hostname, tls-verify-peer=0|1, tls-type.
 * Unknown parameters are refused, as the standard asks ("SHOULD be diagnosed"), except
 * experimental `x-…` ones, which are ignored. The query is split by hand, not with
 * URLSearchParams: that turns "+" into a space, and socket paths may contain "+".
 */
import {UsageError} from '../errors/errors.js'

export const NBD_DEFAULT_PORT = 10809

export type NbdTransport = {kind: 'unix'; path: string} | {kind: 'tcp'; host: string; port: number}

export interface NbdUri {
  /** The URI as the user wrote it. */
  uri: string
  /** nbds:// or nbds+unix://: the connection must be TLS or fail. */
  tls: boolean
  transport: NbdTransport
  /** Decoded; may be empty. */
  exportName: string
  tlsCertificates?: string
  tlsPskFile?: string
  /** From tls-username, or the URI's userinfo (`nbds://alice@host/x`). */
  tlsUsername?: string
  /** The name the server's certificate must carry (default: the URI's host, or localhost over a unix socket). */
  tlsHostname?: string
  /** tls-verify-peer=0 turns certificate checks off; default true. */
  tlsVerifyPeer?: boolean
  tlsType?: 'anon' | 'x509' | 'psk'
}

const SCHEME_FIX = 'write it as nbd://HOST[:PORT]/EXPORT, nbds://…, or nbd+unix:///EXPORT?socket=PATH'
const KNOWN_PARAMS = new Set(['socket', 'tls-certificates', 'tls-psk-file', 'tls-username', 'tls-hostname', 'tls-verify-peer', 'tls-type'])
/** NBD limits export names to 4096 bytes (proto.md). */
const MAX_EXPORT_NAME = 4096

function bad(uri: string, why: string, fix = SCHEME_FIX): UsageError {
  return new UsageError(`invalid NBD URI ${uri}: ${why}`, fix)
}

function decode(uri: string, s: string, what: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    throw bad(uri, `${what} has a malformed percent-escape ("${s}")`, 'escape "%" as %25 and non-ASCII bytes as %XX')
  }
}

/**
 * Parse an NBD URI; a malformed one throws UsageError naming it and the fix. Does not
 * touch the network or the files it names.
 */
export function parseNbdUri(uri: string): NbdUri {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(#.*)?$/.exec(uri)
  if (!m) throw bad(uri, /^nbds?(\+unix)?:/i.test(uri) ? 'expected "//" after the scheme' : 'not an NBD URI')
  const [, schemeRaw, authority, path, query, fragment] = m
  const scheme = schemeRaw.toLowerCase()
  if (!['nbd', 'nbds', 'nbd+unix', 'nbds+unix'].includes(scheme)) throw bad(uri, `unsupported scheme "${schemeRaw}"`)
  if (fragment !== undefined) throw bad(uri, 'it has a #fragment, which NBD URIs do not use', 'remove the "#…" part (escape a literal "#" as %23)')
  const tls = scheme.startsWith('nbds')
  const unix = scheme.endsWith('+unix')

  const params = new Map<string, string>()
  if (query) {
    for (const part of query.split('&')) {
      if (part === '') continue
      const eq = part.indexOf('=')
      const key = decode(uri, eq < 0 ? part : part.slice(0, eq), 'a query parameter name')
      const value = decode(uri, eq < 0 ? '' : part.slice(eq + 1), `query parameter ${key}`)
      if (key.startsWith('x-')) continue // experimental, by the standard's convention
      if (!KNOWN_PARAMS.has(key)) throw bad(uri, `unknown query parameter "${key}"`, `use only ${[...KNOWN_PARAMS].join(', ')}`)
      if (params.has(key)) throw bad(uri, `query parameter "${key}" is given twice`, 'give it once')
      params.set(key, value)
    }
  }

  // Authority: [userinfo@]host[:port], host being a name, IPv4, or [IPv6].
  let userinfo: string | undefined
  let hostport = authority
  const at = authority.lastIndexOf('@')
  if (at >= 0) {
    userinfo = decode(uri, authority.slice(0, at), 'the user name')
    hostport = authority.slice(at + 1)
  }
  let host: string
  let portText: string | undefined
  if (hostport.startsWith('[')) {
    const close = hostport.indexOf(']')
    if (close < 0) throw bad(uri, 'an IPv6 address opened with "[" is not closed with "]"', 'write it as nbd://[::1]:10809/EXPORT')
    host = hostport.slice(1, close)
    if (!/^[0-9A-Fa-f:.]+$/.test(host) || !host.includes(':')) throw bad(uri, `"[${host}]" is not an IPv6 address`, 'write it as nbd://[::1]:10809/EXPORT')
    const rest = hostport.slice(close + 1)
    if (rest !== '' && !rest.startsWith(':')) throw bad(uri, `unexpected "${rest}" after the IPv6 address`)
    if (rest.startsWith(':')) portText = rest.slice(1)
  } else {
    const colon = hostport.lastIndexOf(':')
    if (colon >= 0) {
      host = hostport.slice(0, colon)
      portText = hostport.slice(colon + 1)
      if (host.includes(':')) throw bad(uri, `"${hostport}" looks like an IPv6 address without brackets`, 'write IPv6 addresses in brackets: nbd://[::1]:10809/EXPORT')
    } else host = hostport
    host = decode(uri, host, 'the host')
    if (host !== '' && !/^[A-Za-z0-9._~-]+$/.test(host)) throw bad(uri, `"${host}" is not a host name or address`, 'check the host part')
  }
  let port = NBD_DEFAULT_PORT
  if (portText !== undefined && portText !== '') {
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw bad(uri, `port "${portText}" is not a number from 1 to 65535`, 'check the port (the NBD default is 10809)')
    port = Number(portText)
  }

  let transport: NbdTransport
  if (unix) {
    if (host !== '' || portText !== undefined) throw bad(uri, `a ${scheme}:// URI names no host ("${hostport}")`, `write it as ${scheme}:///EXPORT?socket=PATH (three slashes)`)
    const socket = params.get('socket')
    if (socket === undefined || socket === '') throw bad(uri, `a ${scheme}:// URI needs ?socket=PATH`, `write it as ${scheme}:///EXPORT?socket=/run/nbd.sock`)
    transport = {kind: 'unix', path: socket}
  } else {
    if (host === '') throw bad(uri, 'it names no host', `write it as ${scheme}://HOST[:PORT]/EXPORT, or use nbd+unix:///EXPORT?socket=PATH for a local socket`)
    if (params.has('socket')) throw bad(uri, `?socket= is for nbd+unix:// URIs, not ${scheme}://`, 'use nbd+unix:///EXPORT?socket=PATH, or drop ?socket=')
    transport = {kind: 'tcp', host, port}
  }

  // The export name: the path without its leading "/".
  if (path !== '' && !path.startsWith('/')) throw bad(uri, 'the export name must follow a "/"')
  const exportName = decode(uri, path.slice(1), 'the export name')
  if (exportName.includes('\0')) throw bad(uri, 'the export name contains a NUL byte', 'remove the %00 from the export name')
  if (Buffer.byteLength(exportName, 'utf8') > MAX_EXPORT_NAME) throw bad(uri, `the export name is longer than ${MAX_EXPORT_NAME} bytes`, 'use a shorter export name')

  const out: NbdUri = {uri, tls, transport, exportName}
  const tlsParams = [...params.keys()].filter((k) => k.startsWith('tls-'))
  if (!tls && (tlsParams.length > 0 || userinfo !== undefined))
    throw bad(uri, `${tlsParams.length ? tlsParams.join(', ') : 'a user name'} only applies to TLS, and ${scheme}:// is not TLS`, `use ${scheme.replace('nbd', 'nbds')}:// to connect with TLS`)
  if (params.has('tls-certificates')) out.tlsCertificates = params.get('tls-certificates')
  if (params.has('tls-psk-file')) out.tlsPskFile = params.get('tls-psk-file')
  if (out.tlsCertificates === '' || out.tlsPskFile === '') throw bad(uri, 'tls-certificates and tls-psk-file need a path', 'give the directory or file, e.g. tls-certificates=/etc/pki/clonectl')
  if (out.tlsCertificates !== undefined && out.tlsPskFile !== undefined) throw bad(uri, 'tls-certificates and tls-psk-file are both given', 'use one: X.509 certificates or a pre-shared key')
  const username = params.get('tls-username')
  if (username !== undefined && userinfo !== undefined && username !== userinfo) throw bad(uri, `the user name "${userinfo}@" and tls-username=${username} differ`, 'give the user name once')
  if ((username ?? userinfo) !== undefined) out.tlsUsername = username ?? userinfo
  if (params.has('tls-hostname')) out.tlsHostname = params.get('tls-hostname')
  const verify = params.get('tls-verify-peer')
  if (verify !== undefined) {
    if (verify !== '0' && verify !== '1' && verify !== 'false' && verify !== 'true') throw bad(uri, `tls-verify-peer=${verify} is not 0 or 1`, 'use tls-verify-peer=1 (the default) or 0')
    out.tlsVerifyPeer = verify === '1' || verify === 'true'
  }
  const type = params.get('tls-type')
  if (type !== undefined) {
    if (type !== 'anon' && type !== 'x509' && type !== 'psk') throw bad(uri, `tls-type=${type} is not anon, x509 or psk`, 'use tls-type=x509 or tls-type=psk')
    out.tlsType = type
    if (type === 'psk' && out.tlsCertificates !== undefined) throw bad(uri, 'tls-type=psk with tls-certificates', 'use tls-psk-file=PATH with tls-type=psk')
    if (type === 'x509' && out.tlsPskFile !== undefined) throw bad(uri, 'tls-type=x509 with tls-psk-file', 'use tls-certificates=DIR with tls-type=x509')
  }
  return out
}

/** Where a parsed URI connects, in words: "unix socket /run/x.sock" or "127.0.0.1:10809". */
export function describeTransport(t: NbdTransport): string {
  if (t.kind === 'unix') return `unix socket ${t.path.startsWith('\0') ? `@${t.path.slice(1)}` : t.path}`
  return t.host.includes(':') ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`
}

/** The URI a client uses to reach a TCP listener: an IPv6 address goes in brackets (`nbd://[::1]:10809/`). */
export function tcpNbdUri(host: string, port: number, tls = false): string {
  return `nbd${tls ? 's' : ''}://${describeTransport({kind: 'tcp', host, port})}/`
}

/** The URI a client uses to reach a unix-socket listener. */
export function unixNbdUri(path: string, tls = false): string {
  return `nbd${tls ? 's' : ''}+unix:///?socket=${path}`
}
