// elf_symbols: the symbol tables of the running executable (/proc/self/exe), read once by each user:
// the emulator finds the static __shared__ arrays there (thread_local symbols), the profiler the
// kernels' names (function symbols). Header-only, for kernels/emu/*.cpp.
#ifndef GIVT_EMU_ELF_SYMBOLS_H
#define GIVT_EMU_ELF_SYMBOLS_H

#include <elf.h>
#include <stdio.h>
#include <string.h>

#include <vector>

namespace givt_emu {

// Calls fn(sym, name) for every symbol of every SHT_SYMTAB section of the executable whose name lies
// inside its string table. Nothing when the file cannot be read or is not a well-formed 64-bit ELF
// (a stripped executable has no SHT_SYMTAB: then nothing either).
template <typename Fn>
void elf_for_each_symbol(Fn fn) {
    FILE *f = fopen("/proc/self/exe", "rb");
    if (!f) return;
    std::vector<unsigned char> img;
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) img.insert(img.end(), buf, buf + n);
    fclose(f);
    if (img.size() < sizeof(Elf64_Ehdr)) return;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img.data();
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64) return;
    if (eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) > img.size()) return;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(img.data() + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
        const Elf64_Shdr *strs = &sh[sh[i].sh_link];
        if (sh[i].sh_offset + sh[i].sh_size > img.size() || strs->sh_offset + strs->sh_size > img.size()) continue;
        const Elf64_Sym *sym = (const Elf64_Sym *)(img.data() + sh[i].sh_offset);
        size_t ns = sh[i].sh_size / sizeof(Elf64_Sym);
        const char *names = (const char *)(img.data() + strs->sh_offset);
        for (size_t j = 0; j < ns; j++)
            if (sym[j].st_name < strs->sh_size) fn(sym[j], names + sym[j].st_name);
    }
}

}  // namespace givt_emu

#endif
