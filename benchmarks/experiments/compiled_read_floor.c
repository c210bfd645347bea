#define _GNU_SOURCE
/* A floor experiment for issue 20's random 4 KiB target, not product code: a compiled
 * single-threaded FUSE read path over a cmlfs blob (format 2, 64 KiB chunks). Each read
 * preads the records it needs with O_DIRECT (as cmlfs's folder store does) and runs
 * AES-256-GCM over each record without the tag check (the CPU cost of opening a record;
 * on a GCM store the bytes are the plaintext, so the experiment is checked), then copies the
 * asked bytes. No leaf-hash check, no cache: what a compiled loop would cost at least. */
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEADER 88
#define CHUNK 65536
#define STRIDE (CHUNK + 28)
static int fd;
static off_t plain_size;
static unsigned char *abuf, pbuf[CHUNK], key[32];
static EVP_CIPHER_CTX *ctx;

static int fl_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (!strcmp(path, "/")) { st->st_mode = S_IFDIR | 0555; st->st_nlink = 2; return 0; }
    if (!strcmp(path, "/weights.bin")) {
        st->st_mode = S_IFREG | 0444; st->st_nlink = 1; st->st_size = plain_size; return 0;
    }
    return -ENOENT;
}

static int fl_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)path; (void)off; (void)fi; (void)flags;
    fill(buf, ".", NULL, 0, 0); fill(buf, "..", NULL, 0, 0); fill(buf, "weights.bin", NULL, 0, 0);
    return 0;
}

static int fl_open(const char *path, struct fuse_file_info *fi) {
    if (strcmp(path, "/weights.bin")) return -ENOENT;
    fi->keep_cache = 1;
    return 0;
}

static int fl_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    if (off >= plain_size) return 0;
    if (off + (off_t)size > plain_size) size = plain_size - off;
    size_t done = 0;
    while (done < size) {
        off_t idx = (off + done) / CHUNK, in = (off + done) % CHUNK;
        size_t clen = plain_size - idx * CHUNK < CHUNK ? plain_size - idx * CHUNK : CHUNK;
        off_t rec = HEADER + idx * STRIDE, start = rec & ~4095L;
        off_t end = (rec + clen + 28 + 4095) & ~4095L;
        if (pread(fd, abuf, end - start, start) < rec - start + (off_t)clen + 28) return -EIO;
        unsigned char *record = abuf + (rec - start);
        int outl;
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, record);
        EVP_DecryptUpdate(ctx, pbuf, &outl, record + 12, clen);
        size_t n = size - done < clen - in ? size - done : clen - in;
        memcpy(buf + done, pbuf + in, n);
        done += n;
    }
    return done;
}

static const struct fuse_operations ops = {
    .getattr = fl_getattr, .readdir = fl_readdir, .open = fl_open, .read = fl_read,
};

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: floor BLOB MOUNTPOINT [fuse options]\n"); return 2; }
    unsigned char header[HEADER];
    int plain = open(argv[1], O_RDONLY);
    if (plain < 0 || pread(plain, header, HEADER, 0) != HEADER) { perror("blob"); return 1; }
    close(plain);
    plain_size = 0;
    for (int i = 16; i < 24; i++) plain_size = plain_size << 8 | header[i];
    fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0 || posix_memalign((void **)&abuf, 4096, STRIDE + 2 * 4096)) { perror("open"); return 1; }
    const char *hex = getenv("FLOOR_KEY");  /* the blob's content key, for this experiment */
    for (int i = 0; hex && i < 32; i++) sscanf(hex + 2 * i, "%2hhx", &key[i]);
    ctx = EVP_CIPHER_CTX_new();
    EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL);
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
