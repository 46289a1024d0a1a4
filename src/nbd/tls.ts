/**
 * TLS credentials for NBD_OPT_STARTTLS (DESIGN §5): files in, Node `tls` options out.
 *
 * Notes on the design:
 * - x509: a server certificate and its key (PEM); with a CA, client certificates are
 *   requested and must chain to it (qemu's verify-peer). PSK: the psktool / qemu file,
 *   lines `identity:hexkey`. Both may be configured at once; a client picks.
 * - Every file is read and checked here, before the server starts: a missing file, a key
 *   that does not match its certificate or an expired certificate is a UsageError or
 *   NotFoundError naming the file and the fix, not a handshake failure seen by a client.
 * - PSK uses OpenSSL's PSK callbacks, which Node exposes for TLS 1.2 cipher suites and
 *   OpenSSL also honours in TLS 1.3 (as an external PSK hashed with SHA-256): Node peers
 *   and gnutls clients (qemu, libnbd) negotiate 1.3. See pskCipherList for the two
 *   changes to Node's default cipher list this needs.
 * - TLS 1.2 is the floor (the NBD spec: MUST support 1.2, older SHOULD NOT be on by default).
 */
import {X509Certificate, createPrivateKey, type KeyObject} from 'node:crypto'
import {readFile, readdir} from 'node:fs/promises'
import {join} from 'node:path'
import {DEFAULT_CIPHERS, type ConnectionOptions, type TlsOptions} from 'node:tls'
import {NotFoundError, RefusedError, UsageError, errnoOf} from '../errors/errors.js'

/** TLS 1.2 PSK suites offered besides the defaults (forward-secret ones first). */
const PSK_CIPHERS = ['ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-AES128-GCM-SHA256', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256']

/**
 * The cipher list when PSK is on. Node's default ends in "!PSK", which would strike the
 * PSK suites whatever follows, so it is dropped. TLS_AES_256_GCM_SHA384 goes too: OpenSSL
 * builds a TLS 1.3 PSK from the legacy callback with SHA-256 and ignores it when the suite
 * picked hashes with SHA-384 — with a certificate configured too, a gnutls client (qemu,
 * libnbd) then gets a certificate handshake it has no credentials for and fails
 * ("Insufficient credentials"). AES-128-GCM and ChaCha20-Poly1305 remain. `pskOnly` (a
 * client with no certificate to check): TLS 1.3 and the PSK suites alone, so a TLS 1.2
 * server cannot pick a certificate suite instead.
 */
export function pskCipherList(pskOnly = false): string {
  const base = DEFAULT_CIPHERS.split(':').filter((c) => c !== '!PSK' && c !== 'TLS_AES_256_GCM_SHA384')
  if (pskOnly) return [...base.filter((c) => c.startsWith('TLS_')), ...PSK_CIPHERS].join(':')
  const at = base.indexOf('HIGH')
  base.splice(at < 0 ? base.length : at, 0, ...PSK_CIPHERS)
  return base.join(':')
}

export interface ServerTlsFiles {
  /** Server certificate (PEM; may carry the chain after it). */
  cert?: string
  /** The certificate's private key (PEM, unencrypted). */
  key?: string
  /** CA certificate(s) client certificates must chain to. */
  ca?: string
  /** psktool-format key file: `identity:hexkey` lines. */
  pskFile?: string
  /** Insist on a client certificate (default: whenever `ca` is given). */
  requireClientCert?: boolean
}

export interface ServerTls {
  /** Options for `tls.createServer` / a server-side TLSSocket. */
  options: TlsOptions
  /** Which credentials are configured. */
  kinds: Array<'x509' | 'psk'>
  /** Client certificates are requested and verified against the CA. */
  verifiesClients: boolean
  /** PSK identities known (never the keys). */
  pskIdentities: string[]
}

export interface ClientTlsFiles {
  /** CA to verify the server's certificate with (default: the system's). */
  ca?: string
  /** Client certificate and key, for servers that verify clients. */
  cert?: string
  key?: string
  /** psktool-format key file. */
  pskFile?: string
  /** PSK identity to use (default: the file's first). */
  username?: string
  /** Name the server certificate must carry (default: the host connected to). */
  servername?: string
}

/** A file's bytes; a missing or unreadable file is an expected error naming it and the fix. */
async function readCredential(path: string, what: string, flag: string): Promise<Buffer> {
  try {
    return await readFile(path)
  } catch (error) {
    const code = errnoOf(error)
    if (code === 'ENOENT') throw new NotFoundError(`${what} ${path} does not exist`, `check the path given to ${flag}`)
    if (code === 'EACCES') throw new UsageError(`${what} ${path} is not readable by this user`, `run as a user who can read it, or fix its permissions (keys: mode 0600)`)
    if (code === 'EISDIR') throw new UsageError(`${what} ${path} is a directory`, `pass the file to ${flag}, or the directory to --tls-dir`)
    throw new UsageError(`cannot read ${what} ${path}: ${(error as Error).message}`)
  }
}

/** Every certificate in a PEM bundle, parsed; errors name the file. */
function parseCerts(pem: Buffer, path: string, what: string, flag: string): X509Certificate[] {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)
  if (!blocks) throw new UsageError(`${what} ${path} holds no PEM certificate (no "BEGIN CERTIFICATE" block)`, `pass a PEM certificate to ${flag}; convert DER with \`openssl x509 -inform der -in FILE -out FILE.pem\``)
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b)
    } catch (error) {
      throw new UsageError(`${what} ${path}: certificate ${i + 1} cannot be parsed (${(error as Error).message})`, `regenerate it, or check that the file was not truncated`)
    }
  })
}

function checkValidity(cert: X509Certificate, path: string, what: string): void {
  const now = Date.now()
  if (Date.parse(cert.validTo) < now) throw new UsageError(`${what} ${path} expired on ${cert.validTo}`, 'renew it (every client would refuse it)')
  if (Date.parse(cert.validFrom) > now) throw new UsageError(`${what} ${path} is not valid before ${cert.validFrom}`, "check this machine's clock, or reissue the certificate")
}

function parseKey(pem: Buffer, path: string, flag: string): KeyObject {
  try {
    return createPrivateKey(pem)
  } catch (error) {
    const msg = (error as Error).message
    if (/passphrase|encrypted/i.test(msg)) throw new UsageError(`TLS key ${path} is encrypted`, `decrypt it for unattended use: \`openssl pkey -in ${path} -out KEY.pem\` (keep it mode 0600)`)
    throw new UsageError(`TLS key ${path} is not a PEM private key (${msg})`, `pass the certificate's private key to ${flag}`)
  }
}

/**
 * Parse a psktool / qemu PSK file: one `identity:hexkey` per line; blank lines and lines
 * starting with # are skipped. Identities are unique; a key is non-empty hex (psktool
 * writes 32 bytes; no minimum is imposed, as qemu imposes none).
 */
export function parsePskFile(text: string, path: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>()
  const lines = text.split(/\r?\n/)
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const at = `${path} line ${i + 1}`
    const colon = line.lastIndexOf(':')
    if (colon <= 0) throw new UsageError(`${at} is not "identity:hexkey"`, 'make the file with `psktool -u NAME -p FILE`, or write lines of the form name:hexkey')
    const identity = line.slice(0, colon)
    const hex = line.slice(colon + 1)
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new UsageError(`${at}: the key of "${identity}" is not an even number of hex digits`, 'write the key as hex, e.g. from `openssl rand -hex 32`')
    if (keys.has(identity)) throw new UsageError(`${at}: identity "${identity}" appears twice`, 'keep one key per identity')
    keys.set(identity, Buffer.from(hex, 'hex'))
  }
  if (keys.size === 0) throw new UsageError(`PSK file ${path} holds no keys`, 'add a line identity:hexkey (e.g. `psktool -u clonectl -p FILE`)')
  return keys
}

async function loadPsk(path: string, flag: string): Promise<Map<string, Buffer>> {
  return parsePskFile((await readCredential(path, 'PSK file', flag)).toString('utf8'), path)
}

/**
 * Read and check server credentials; resolves to the Node TLS options the NBD server hands
 * to the handshake after NBD_OPT_STARTTLS. Reads files; no side effects.
 */
export async function loadServerTls(files: ServerTlsFiles): Promise<ServerTls> {
  const {cert: certPath, key: keyPath, ca: caPath, pskFile} = files
  if ((certPath === undefined) !== (keyPath === undefined))
    throw new UsageError(certPath ? `--tls-cert ${certPath} is given without its key` : `--tls-key ${keyPath} is given without its certificate`, 'pass both --tls-cert and --tls-key (or --tls-dir with server-cert.pem and server-key.pem)')
  if (!certPath && !pskFile) throw new UsageError('no TLS credentials given', 'pass --tls-cert and --tls-key, --tls-dir DIR, or --tls-psk FILE')
  if (caPath && !certPath) throw new UsageError(`--tls-ca ${caPath} needs a server certificate too`, 'pass --tls-cert and --tls-key with it')
  const requireClientCert = files.requireClientCert ?? caPath !== undefined
  if (requireClientCert && !caPath) throw new UsageError('client certificates cannot be verified without a CA', 'pass --tls-ca with the CA that signs client certificates')

  const options: TlsOptions = {minVersion: 'TLSv1.2'}
  const kinds: ServerTls['kinds'] = []
  let pskIdentities: string[] = []
  if (certPath && keyPath) {
    const certPem = await readCredential(certPath, 'TLS certificate', '--tls-cert')
    const keyPem = await readCredential(keyPath, 'TLS key', '--tls-key')
    const [leaf] = parseCerts(certPem, certPath, 'TLS certificate', '--tls-cert')
    checkValidity(leaf, certPath, 'TLS certificate')
    const key = parseKey(keyPem, keyPath, '--tls-key')
    if (!leaf.checkPrivateKey(key)) throw new UsageError(`TLS key ${keyPath} does not belong to certificate ${certPath}`, 'pass the key the certificate was issued for (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)')
    options.cert = certPem
    options.key = keyPem
    if (caPath) {
      const caPem = await readCredential(caPath, 'CA certificate', '--tls-ca')
      const cas = parseCerts(caPem, caPath, 'CA certificate', '--tls-ca')
      if (!cas.some((c) => c.ca)) throw new UsageError(`CA certificate ${caPath} is not a CA (no basicConstraints CA:TRUE)`, 'pass the certificate of the CA that signs client certificates')
      options.ca = caPem
    }
    kinds.push('x509')
  }
  if (pskFile) {
    const keys = await loadPsk(pskFile, '--tls-psk')
    pskIdentities = [...keys.keys()]
    // null: unknown identity, the handshake fails with unknown_psk_identity.
    options.pskCallback = (_socket, identity) => keys.get(identity) ?? null
    options.ciphers = pskCipherList()
    kinds.push('psk')
  }
  if (requireClientCert) {
    options.requestCert = true
    options.rejectUnauthorized = true
  }
  return {options, kinds, verifiesClients: requireClientCert, pskIdentities}
}

/**
 * Client options for a server that speaks TLS (our tests; later, NBD remote volumes).
 * Reads files; no side effects. With a PSK file and no certificate options, PSK only.
 */
export async function loadClientTls(files: ClientTlsFiles): Promise<ConnectionOptions> {
  const options: ConnectionOptions = {minVersion: 'TLSv1.2'}
  if (files.servername) options.servername = files.servername
  if (files.ca) {
    const pem = await readCredential(files.ca, 'CA certificate', '--tls-ca')
    parseCerts(pem, files.ca, 'CA certificate', '--tls-ca')
    options.ca = pem
  }
  if ((files.cert === undefined) !== (files.key === undefined)) throw new UsageError('a client certificate needs its key and the key its certificate', 'pass both, or neither')
  if (files.cert && files.key) {
    const certPem = await readCredential(files.cert, 'TLS certificate', '--tls-cert')
    const keyPem = await readCredential(files.key, 'TLS key', '--tls-key')
    const [leaf] = parseCerts(certPem, files.cert, 'TLS certificate', '--tls-cert')
    if (!leaf.checkPrivateKey(parseKey(keyPem, files.key, '--tls-key'))) throw new UsageError(`TLS key ${files.key} does not belong to certificate ${files.cert}`, 'pass the key the certificate was issued for')
    options.cert = certPem
    options.key = keyPem
  }
  if (files.pskFile) {
    const keys = await loadPsk(files.pskFile, '--tls-psk')
    const identity = files.username ?? keys.keys().next().value!
    const psk = keys.get(identity)
    if (!psk) throw new UsageError(`PSK file ${files.pskFile} has no key for "${identity}"`, `use one of its identities: ${[...keys.keys()].join(', ')}`)
    options.pskCallback = () => ({identity, psk})
    options.ciphers = pskCipherList(!files.ca && !files.cert)
    // No certificate in a PSK handshake: the key is the authentication.
    if (!files.ca) options.checkServerIdentity = () => undefined
  }
  return options
}

/** Credential files found in a qemu-style directory (tls-creds-x509 / tls-creds-psk `dir=`). */
export interface TlsDirectory {
  cert?: string
  key?: string
  ca?: string
  pskFile?: string
}

/**
 * Map a qemu-style credentials directory to file paths, the way qemu, nbdkit and libnbd
 * read it: server-cert.pem + server-key.pem (endpoint server) or client-cert.pem +
 * client-key.pem (endpoint client), ca-cert.pem, keys.psk. Missing optional files are
 * left out; a directory with neither a certificate pair nor keys.psk is an error.
 */
export async function tlsDirectory(dir: string, endpoint: 'server' | 'client' = 'server'): Promise<TlsDirectory> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch (error) {
    const code = errnoOf(error)
    if (code === 'ENOENT') throw new NotFoundError(`TLS directory ${dir} does not exist`, 'pass the directory holding ca-cert.pem, server-cert.pem and server-key.pem to --tls-dir')
    if (code === 'ENOTDIR') throw new UsageError(`--tls-dir ${dir} is not a directory`, 'pass a directory, or name the files with --tls-cert / --tls-key / --tls-ca')
    throw new UsageError(`cannot read TLS directory ${dir}: ${(error as Error).message}`)
  }
  const has = new Set(names)
  const found: TlsDirectory = {}
  const cert = `${endpoint}-cert.pem`
  const key = `${endpoint}-key.pem`
  if (has.has(cert) !== has.has(key)) throw new UsageError(`TLS directory ${dir} has ${has.has(cert) ? cert : key} but not ${has.has(cert) ? key : cert}`, 'put both there, or remove the odd one')
  if (has.has(cert)) {
    found.cert = join(dir, cert)
    found.key = join(dir, key)
  }
  // A server's CA only verifies client certificates, which need a certificate of its own.
  if (has.has('ca-cert.pem') && (endpoint === 'client' || found.cert)) found.ca = join(dir, 'ca-cert.pem')
  if (has.has('keys.psk')) found.pskFile = join(dir, 'keys.psk')
  if (endpoint === 'server' && !found.cert && !found.pskFile)
    throw new UsageError(`TLS directory ${dir} has neither ${cert} + ${key} nor keys.psk`, 'make them as for qemu-nbd --tls-creds (see qemu-doc "TLS setup"), or name the files with --tls-cert / --tls-key')
  return found
}

/** Only the host itself can reach these addresses. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host) || /^::ffff:127\.\d+\.\d+\.\d+$/i.test(host)
}

export interface TcpListenerAccess {
  /** HOST:PORT as the user wrote it. */
  listen: string
  host: string
  /** The TLS credentials configured (undefined: none). */
  tls?: Pick<ServerTls, 'kinds' | 'verifiesClients'>
  required: boolean
  /** The user accepts a listener that authenticates no client (--allow-unauthenticated). */
  allowUnauthenticated: boolean
}

/**
 * Why a TCP listener lets in clients nobody authenticated, or undefined when every client
 * must prove who it is: TLS required, and every credential a client may pick checks it (a
 * PSK always does; a certificate handshake only with a CA that client certificates must
 * chain to).
 */
export function unauthenticatedReason(a: Pick<TcpListenerAccess, 'tls' | 'required'>): string | undefined {
  if (!a.tls) return 'plain TCP without TLS'
  if (!a.required) return 'TLS is offered but not required, so a client that does not ask for it is served in plaintext'
  if (a.tls.kinds.includes('x509') && !a.tls.verifiesClients) return 'TLS without --tls-ca checks no client certificate, so any TLS client is accepted'
  return undefined
}

/**
 * Decide whether a TCP listener may start (issue 13 item 2). A listener that authenticates
 * no client is refused on any address but loopback unless the user opts in; on loopback
 * every local user can use it, which is said in a warning pointing to the unix socket.
 * Returns the warnings to print; throws RefusedError. No side effects.
 */
export function checkTcpListener(a: TcpListenerAccess): string[] {
  const why = unauthenticatedReason(a)
  if (!why) return []
  const require = 'require client certificates (--tls-cert/--tls-key with --tls-ca CA.pem, or --tls-dir with ca-cert.pem) or a PSK (--tls-psk FILE), with --tls-required'
  if (isLoopback(a.host))
    return [`--listen ${a.listen} authenticates no client (${why}): every user of this machine can connect and read and overwrite the source; use the unix socket instead (the default, mode 0600: only this user), or ${require}`]
  const risk = `--listen ${a.listen} authenticates no client (${why}): any client that reaches the port can read and overwrite the source`
  if (!a.allowUnauthenticated) throw new RefusedError(risk, `${require}; or accept that risk with --allow-unauthenticated`)
  return [`${risk} (allowed by --allow-unauthenticated); to close it, ${require}`]
}
