-- Each xsha service owns its tables in its own database; the image's entrypoint has created the user xsha
-- (MARIADB_USER, password from the db_password secret) before running this file.
CREATE DATABASE IF NOT EXISTS xsha_sync CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS xsha_ha CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
GRANT ALL PRIVILEGES ON xsha_sync.* TO 'xsha'@'%';
GRANT ALL PRIVILEGES ON xsha_ha.* TO 'xsha'@'%';
FLUSH PRIVILEGES;
