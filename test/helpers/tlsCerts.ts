/**
 * x509 credentials for TLS tests, made with openssl in a temporary directory: a CA, a server
 * certificate for localhost / 127.0.0.1 signed by it, and a client certificate. The file
 * names are the ones qemu's tls-creds-x509 expects in its `dir=` (ca-cert.pem,
 * server-cert.pem, server-key.pem, client-cert.pem, client-key.pem), so one directory
 * serves qemu-nbd, nbdkit (--tls-certificates DIR), libnbd's tools and clonectl.
 */
import {execFileSync} from 'node:child_process'
import {mkdtempSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

export interface TlsCreds {
  dir: string
  caCert: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  /** A second, unrelated CA (a peer signed by it must be refused). */
  otherCaCert: string
  /** A PSK file in the psktool / qemu format: `username:hexkey`. */
  pskFile: string
  pskIdentity: string
  pskKeyHex: string
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, {cwd, stdio: ['ignore', 'ignore', 'pipe']})
}

function makeCa(dir: string, name: string): void {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}-key.pem`, '-out', `${name}-cert.pem`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir)
}

function makeLeaf(dir: string, name: string, ca: string, ext: string): void {
  writeFileSync(join(dir, `${name}.ext`), ext)
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name === 'server' ? 'localhost' : 'clonectl-test-client'}`, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`], dir)
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}-cert.pem`, '-CAkey', `${ca}-key.pem`, '-CAcreateserial', '-days', '2', '-out', `${name}-cert.pem`, '-extfile', `${name}.ext`], dir)
}

/** Make a fresh set of credentials. Synchronous; a few hundred ms. */
export function makeTlsCreds(parent = tmpdir()): TlsCreds {
  const dir = mkdtempSync(join(parent, 'clonectl-tls-'))
  makeCa(dir, 'ca')
  makeCa(dir, 'otherca')
  makeLeaf(dir, 'server', 'ca', 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n')
  makeLeaf(dir, 'client', 'ca', 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n')
  const pskIdentity = 'clonectl'
  const pskKeyHex = '8c1e6b0a3f5d2e7c9a4b1f0e6d3c2b1a8c1e6b0a3f5d2e7c9a4b1f0e6d3c2b1a'
  const pskFile = join(dir, 'keys.psk')
  writeFileSync(pskFile, `${pskIdentity}:${pskKeyHex}\n`, {mode: 0o600})
  return {
    dir,
    caCert: join(dir, 'ca-cert.pem'),
    serverCert: join(dir, 'server-cert.pem'),
    serverKey: join(dir, 'server-key.pem'),
    clientCert: join(dir, 'client-cert.pem'),
    clientKey: join(dir, 'client-key.pem'),
    otherCaCert: join(dir, 'otherca-cert.pem'),
    pskFile,
    pskIdentity,
    pskKeyHex,
  }
}
