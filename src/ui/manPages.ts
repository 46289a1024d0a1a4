/**
 * Generates man/clonectl.1 and one page per command (clonectl-clone-sync.1, ...) from the
 * oclif manifest, i.e. from the commands' own metadata, so pages cannot drift from the code.
 * Run by `npm run build` after `oclif manifest`. nbdinfo(1)-style sections: NAME, SYNOPSIS,
 * DESCRIPTION, OPTIONS, EXIT STATUS, EXAMPLES, FILES, SEE ALSO.
 */
import {readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import fse from 'fs-extra'
import {ExitCode, type ExitCodeName, exitCodeMeanings} from '../errors/errors.js'

interface ManifestFlag {
  name: string
  char?: string
  type: 'boolean' | 'option'
  summary?: string
  description?: string
  helpValue?: string
  default?: unknown
  allowNo?: boolean
  required?: boolean
  hidden?: boolean
}
interface ManifestArg {
  name: string
  description?: string
  required?: boolean
}
interface ManifestCommand {
  id: string
  summary?: string
  description?: string
  examples?: Array<string | {command: string; description?: string}>
  flags: Record<string, ManifestFlag>
  args: Record<string, ManifestArg>
  strict?: boolean
  hidden?: boolean
  pluginType?: string
}

/** The exit statuses, in order, from the one table in src/errors/errors.ts. */
export const exitStatusText: Array<[number, string]> = (Object.keys(ExitCode) as ExitCodeName[]).map((k) => [ExitCode[k], exitCodeMeanings[k]])

const README_START = '<!-- exit-codes -->'
const README_STOP = '<!-- exit-codes-stop -->'

/** README's exit-code table, between its markers, as Markdown (generated: edit errors.ts). */
export function readmeExitTable(): string {
  const rows = exitStatusText.map(([code, text]) => `| ${code} | ${text.replace(/\|/g, '\\|')} |`)
  return [README_START, '<!-- generated from src/errors/errors.ts by `npm run build`: edit it there -->', '| code | meaning |', '|---|---|', ...rows, README_STOP].join('\n')
}

/** README with its exit-code table replaced; the text unchanged when it has no markers. */
export function withReadmeExitTable(readme: string): string {
  const a = readme.indexOf(README_START)
  const b = readme.indexOf(README_STOP)
  if (a < 0 || b < a) return readme
  return readme.slice(0, a) + readmeExitTable() + readme.slice(b + README_STOP.length)
}

function esc(text: string): string {
  return (
    text
      .replace(/\\/g, '\\e')
      .replace(/^([.'])/gm, '\\&$1')
      .replace(/-/g, '\\-')
      // groff reads its input as Latin-1: anything else goes in as a named Unicode glyph (→ is \[u2192]).
      .replace(/[^\p{ASCII}]/gu, (ch) => `\\[u${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}]`)
  )
}

function expand(text: string): string {
  return text.replace(/<%= config\.bin %>/g, 'clonectl').replace(/<%= command\.id %>/g, '')
}

function flagLine(f: ManifestFlag): string {
  const names = [f.char ? `\\-${f.char}` : '', `\\-\\-${f.allowNo ? '[no\\-]' : ''}${esc(f.name)}`].filter(Boolean).join(', ')
  return f.type === 'option' ? `${names} \\fI${esc(f.helpValue ?? 'VALUE')}\\fR` : names
}

export function renderCommandPage(c: ManifestCommand, version: string): string {
  const page = `clonectl-${c.id.replace(/:/g, '-')}`
  const words = c.id.split(':').join(' ')
  const args = Object.values(c.args ?? {})
    .map((a) => (a.required ? `\\fI${a.name.toUpperCase()}\\fR` : `[\\fI${a.name.toUpperCase()}\\fR]`) + (c.strict === false && a.required ? '...' : ''))
    .join(' ')
  const flags = Object.values(c.flags ?? {}).filter((f) => !f.hidden)
  const out = [
    `.TH ${page.toUpperCase()} 1 "" "clonectl ${version}" "clonectl manual"`,
    '.SH NAME',
    `${page} \\- ${esc(c.summary ?? '')}`,
    '.SH SYNOPSIS',
    `.B clonectl ${words}`,
    `${args} [\\fIOPTIONS\\fR]`,
    '.SH DESCRIPTION',
    esc(expand(c.summary ?? '')),
  ]
  if (c.description) for (const para of expand(c.description).split(/\n\n+/)) out.push('.PP', esc(para))
  out.push('.SH OPTIONS')
  for (const a of Object.values(c.args ?? {})) out.push('.TP', `\\fI${a.name.toUpperCase()}\\fR`, esc(a.description ?? ''))
  for (const f of flags) {
    const def = f.default !== undefined && f.default !== false ? ` Default: ${esc(String(f.default))}.` : ''
    out.push('.TP', flagLine(f), esc(f.summary ?? f.description ?? '') + def)
  }
  out.push('.SH EXIT STATUS', 'See \\fBclonectl\\fR(1) for the full list.')
  for (const [code, text] of exitStatusText) out.push('.TP', `.B ${code}`, esc(text))
  if (c.examples?.length) {
    out.push('.SH EXAMPLES')
    for (const ex of c.examples) {
      const cmd = typeof ex === 'string' ? ex : ex.command
      out.push('.PP', '.nf', esc(expand(cmd)), '.fi')
    }
  }
  out.push(...environmentSection())
  out.push(
    '.SH FILES',
    '.TP',
    '.I /var/lib/clonectl/groups/GROUP/',
    'group.json, one delta map per clone, the protected restore map during a restore, the lock, and the sockets of a running server (root; otherwise $XDG_STATE_HOME/clonectl, or $CLONECTL_STATE_DIR / \\-\\-state\\-dir).',
    '.SH SEE ALSO',
    '\\fBclonectl\\fR(1), \\fBnbdinfo\\fR(1), \\fBqemu\\-img\\fR(1)',
  )
  return `${out.join('\n')}\n`
}

/** The environment variables every command reads. */
export function environmentSection(): string[] {
  const vars: Array<[string, string]> = [
    ['CLONECTL_STATE_DIR', 'The state directory, unless --state-dir is given.'],
    ['CLONECTL_NBD_CONNECT_TIMEOUT', 'Seconds allowed to connect to a remote (NBD) clone: TCP, TLS and the NBD handshake (default 10).'],
    ['CLONECTL_NBD_REQUEST_TIMEOUT', 'Seconds allowed for one request to a remote clone before its connection is dropped (default 60).'],
    ['NO_COLOR', 'No colour, no live progress bar.'],
    ['CLONECTL_STDIO', 'node: write stdout and stderr through Node\'s streams even when they are a pipe, a socket or a file (by default they are written with blocking writes to the descriptor, as C tools do; serve always uses Node\'s streams).'],
  ]
  return ['.SH ENVIRONMENT', ...vars.flatMap(([k, v]) => ['.TP', `.B ${k}`, esc(v)])]
}

export function renderMainPage(commands: ManifestCommand[], version: string): string {
  const out = [
    `.TH CLONECTL 1 "" "clonectl ${version}" "clonectl manual"`,
    '.SH NAME',
    'clonectl \\- full\\-copy clones of a volume: fracture, incremental sync, and a protected restore that keeps the source usable and the clone untouched',
    '.SH SYNOPSIS',
    '.B clonectl',
    '\\fICOMMAND\\fR [\\fIARGS\\fR] [\\fIOPTIONS\\fR]',
    '.SH DESCRIPTION',
    esc('clonectl keeps full-copy clones of a source volume (an image file or a block device) in a clone group, fractures them into point-in-time copies, synchronizes them incrementally through per-clone delta maps, and restores the source from a clone. A protected restore makes the source usable at once: hosts read and write it through `clonectl serve` while the restore copies in the background (copy on demand), the clone is never modified, and a restore killed by SIGKILL or power loss resumes with nothing lost.'),
    '.SH COMMANDS',
  ]
  for (const c of commands) out.push('.TP', `\\fBclonectl ${c.id.split(':').join(' ')}\\fR`, `${esc(c.summary ?? '')} See \\fBclonectl\\-${c.id.replace(/:/g, '\\-')}\\fR(1).`)
  out.push('.SH EXIT STATUS')
  for (const [code, text] of exitStatusText) out.push('.TP', `.B ${code}`, esc(text))
  out.push(...environmentSection())
  out.push(
    '.SH FILES',
    '.TP',
    '.I /var/lib/clonectl',
    'The state directory for root (mode 0700).',
    '.SH SEE ALSO',
    commands.map((c) => `\\fBclonectl\\-${c.id.replace(/:/g, '\\-')}\\fR(1)`).join(', '),
  )
  return `${out.join('\n')}\n`
}

/** The clonectl commands of a manifest (plugins' commands such as help are left to oclif). */
export function ownCommands(manifest: {commands: Record<string, ManifestCommand>}): ManifestCommand[] {
  return Object.values(manifest.commands)
    .filter((c) => !c.hidden && (c.pluginType === undefined || c.pluginType === 'core'))
    .sort((a, b) => a.id.localeCompare(b.id))
}

function main(): void {
  const root = process.argv[2] ?? '.'
  const manifest = JSON.parse(readFileSync(join(root, 'oclif.manifest.json'), 'utf8')) as {version: string; commands: Record<string, ManifestCommand>}
  const dir = join(root, 'man')
  // Build output, not state: fs-extra's plain writes (durable writes are DurableFs's alone).
  // Emptied first, so a removed command leaves no page behind.
  fse.emptyDirSync(dir)
  const cmds = ownCommands(manifest)
  fse.outputFileSync(join(dir, 'clonectl.1'), renderMainPage(cmds, manifest.version))
  for (const c of cmds) fse.outputFileSync(join(dir, `clonectl-${c.id.replace(/:/g, '-')}.1`), renderCommandPage(c, manifest.version))
  const readme = join(root, 'README.md')
  const text = readFileSync(readme, 'utf8')
  const updated = withReadmeExitTable(text)
  if (updated !== text) writeFileSync(readme, updated)
  process.stderr.write(`wrote ${cmds.length + 1} man pages to ${dir}\n`)
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) main()
