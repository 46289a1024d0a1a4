/**
 * Build step (`npm run build`): write the --json schemas (schemas.ts) to schemas/*.schema.json,
 * which ship in the package, so a script's author can read the contract without the source.
 * The directory is emptied of old *.schema.json first, so a removed command's schema goes too.
 */
import {mkdirSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {schemaDocuments} from './schemas.js'

function main(): void {
  const dir = join(process.argv[2] ?? '.', 'schemas')
  mkdirSync(dir, {recursive: true})
  for (const f of readdirSync(dir)) if (f.endsWith('.schema.json')) rmSync(join(dir, f))
  const docs = schemaDocuments()
  for (const [file, doc] of Object.entries(docs)) writeFileSync(join(dir, file), `${JSON.stringify(doc, null, 2)}\n`)
  process.stderr.write(`wrote ${Object.keys(docs).length} JSON schemas to ${dir}\n`)
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) main()
